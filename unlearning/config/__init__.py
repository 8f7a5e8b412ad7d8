"""Config checks and plumbing: the one validation layer (kinds, the rule table, cross-key rules),
the trainer topology a config asks for, and the Hydra sweep callbacks and resolvers."""
