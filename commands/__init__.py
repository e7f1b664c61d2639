"""The application layer: what each ``fedmq`` command does beyond starting an aggregator or a silo.

``cli.py`` parses the command line and calls these; scripts and notebooks can call them too.
Each module is one command's job: ``history`` (and ``history_plot``), ``status``, ``export``,
``demo``, and ``config_file`` (options from TOML files and ``FEDMQ_*`` variables).
"""
