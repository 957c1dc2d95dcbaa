"""Theory predictions for any configuration (BRIEF §4), each with its assumptions recorded.

- Bayes-optimal masked-token predictor and the loss floor: `bayes_predictive`,
  `bayes_log_prob`, `bayes_loss` (topicdyn.theory.bayes; posterior numerics in .posterior);
  under mask.objective=causal the same calls give the next-token predictor
  (`next_token_predictive`, .next_token).
- Symmetric optima of the uniform-attention regimes V and E: `symmetric_optimum_V`,
  `symmetric_optimum_E`, `linear_loss`, `block_stats` (.optima).
- Symmetric optimum of regime A (attention scores with W^V = topic block):
  `attention_optimum_A`, `attention_loss`, `attention_ratio`, `score_matrix` (.attention).
- Population samples shared by the optima: `population` (exact enumeration for tiny configs,
  Monte Carlo otherwise), `monte_carlo_sample`, `exact_sample`, `enumerate_batch` (.population).
- One content-keyed memo of the expensive pieces (.cache): `cache_info`, `clear_cache`.
- Everything at once: `predict` (.summary); `python -m topicdyn.theory [PRESET] [overrides]`.
"""
from topicdyn.theory.attention import (AttentionOptimum, attention_loss, attention_optimum_A,
                                       attention_ratio, score_matrix)
from topicdyn.theory.bayes import (BayesPredictive, LossEstimate, batch_ce, bayes_log_prob,
                                   bayes_loss, bayes_predictive, unigram)
from topicdyn.theory.cache import cache_info
from topicdyn.theory.cache import clear as clear_cache
from topicdyn.theory.next_token import next_token_predictive
from topicdyn.theory.optima import (LinearOptimum, block_stats, linear_loss, symmetric_optimum_E,
                                    symmetric_optimum_V)
from topicdyn.theory.population import (PopulationSample, enumerate_batch, exact_sample,
                                        from_batch, monte_carlo_sample, population)
from topicdyn.theory.posterior import (TopicPosterior, observation_noise, prior_moment,
                                       topic_posterior)
from topicdyn.theory.summary import predict

__all__ = [
    "AttentionOptimum", "BayesPredictive", "LinearOptimum", "LossEstimate", "PopulationSample",
    "TopicPosterior", "attention_loss", "attention_optimum_A", "attention_ratio", "batch_ce",
    "bayes_log_prob", "bayes_loss", "bayes_predictive", "block_stats", "cache_info", "clear_cache",
    "enumerate_batch", "exact_sample", "from_batch", "linear_loss", "monte_carlo_sample",
    "next_token_predictive", "observation_noise", "population", "predict", "prior_moment",
    "score_matrix", "symmetric_optimum_E", "symmetric_optimum_V", "topic_posterior", "unigram",
]
