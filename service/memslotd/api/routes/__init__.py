"""Routers: parse, call one use case, convert the result."""
