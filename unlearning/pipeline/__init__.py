"""One job from config to results: the stages (pretrain, scores, split, oracle, mask, unlearn,
ensembles), their cache keys and content-addressed cache, resuming, the ranks of a multi-process
job and the fault-injection hook."""
