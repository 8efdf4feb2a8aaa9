"""Routes: ways of factorising G = AᵀA (primal, dual, lstsq, krylov, structured), one module each.

``_registry.ROUTES`` lists them in order of preference; ``_inverse`` writes each generalized inverse once
against the :class:`~natgrad._routes._factorization.Factorization` a route returns.
"""
