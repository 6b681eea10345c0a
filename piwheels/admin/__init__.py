"""The admin tools: piw-add, piw-remove, piw-rebuild, piw-import and piw-audit.

All but piw-audit talk to the master's admin gateway over the admin socket
(see :mod:`piwheels.admin.client`); piw-audit reads the database and the
output folder directly.
"""
