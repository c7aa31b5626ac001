from feast import FeatureService
from views import account_stats

# One feature service per model version; triton_models/fraud_scorer/config.pbtxt names the same features.
fraud_scorer_v1 = FeatureService(name="fraud_scorer_v1", features=[account_stats])
