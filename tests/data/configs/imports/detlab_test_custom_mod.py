"""A module that a config imports through custom_imports."""
LOADED = True
