"""Claims judged per checkpoint: the registry and verdict rules (claims.core) and the claims
of Li, Li & Risteski 2023 (claims.p1), registered on import."""
from topicdyn.claims.core import (BAYES_FLOOR, CE, CLAIMS, DIVERGED, FAIL, NON_FINITE,  # noqa: F401
                                  HOLDS, NOT_APPLICABLE, NOT_CONVERGED, NOT_DECIDABLE, PASS, REFUTED,
                                  REPORTED,
                                  ROW_EXTRAS, Claim, Judging, combined_tolerance, judge_all,
                                  mean_sd, not_applicable_row, register, t50, traits_for,
                                  undecidable, verdict)
from topicdyn.claims import p1  # noqa: F401,E402  (registers the claims)
from topicdyn.claims import singh  # noqa: F401,E402  (the embedding-space claims, opt-in)
from topicdyn.claims import text  # noqa: F401,E402  (the Wikipedia checks vs shuffled labels, opt-in)
from topicdyn.claims import trajectory  # noqa: F401,E402  (the reduced dynamics band claim)
