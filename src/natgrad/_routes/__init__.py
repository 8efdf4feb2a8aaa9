"""Ways of computing v = G⁻∇: dense (primal, dual, lstsq) and matrix-free (krylov)."""
