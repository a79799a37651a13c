"""One module per ``sanakit`` sub-command; each exposes ``add_parser(subparsers)`` and registers
a parser whose ``func`` default takes the parsed namespace and returns an exit code. The
modules only parse and call library code (``sanakit.cli`` lists them)."""
