"""What a Fogline process is made of: the master and model-server cores, and the process runner."""
