"""Plumbing shared by the lab's notebooks: paths, images, labels, models, clients."""
