"""piwheels: a build farm that turns source releases into wheels and serves them."""

__version__ = "0.1.0"
__all__ = ["__version__"]
