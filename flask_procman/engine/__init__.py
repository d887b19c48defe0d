"""The local engine: spawning, identifying and signalling processes, their log files, the watcher."""
