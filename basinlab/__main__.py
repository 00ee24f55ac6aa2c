from basinlab.launch.cli import entry

entry()
