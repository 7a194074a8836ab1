"""HTTP edge: routes, middlewares and the one mapping from KmsError to problem+json."""
