"""The master: the tasks that coordinate a farm (see :mod:`piwheels.master.main`)."""
