"""The HTTP layer: schemas, dependencies, routes and the error mapping."""
