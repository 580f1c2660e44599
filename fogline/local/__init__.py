"""``fogline up``: the local stack, its supervisor and launcher, and the sample and digits models."""
