"""
Notifications: the daemon tells a person when something is wrong, and when
it is right again, through the ``[notify]`` targets (a webhook, e-mail, a
command, a healthchecks.io-style ping URL).  ``conditions`` sees what is
wrong, ``notifier`` decides what to send and keeps each delivery's state,
and one module per transport sends.
"""
