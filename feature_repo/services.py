from feast import FeatureService
from views import account_stats, device_baselines

# One feature service per model version; each model's config.pbtxt names the same features.
fraud_scorer_v1 = FeatureService(name="fraud_scorer_v1", features=[account_stats])
anomaly_detector_v1 = FeatureService(name="anomaly_detector_v1", features=[device_baselines])
