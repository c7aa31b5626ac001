"""The models: their networks, training and export into the Triton model repository.

- `fraud_scorer`: the fraud network, with input scaling inside the TorchScript module;
- `anomaly_detector`: the telemetry autoencoder, its score the reconstruction error past the threshold;
- `spec`: what a served model needs from a request (features, their domains, labels), from its `config.pbtxt`;
- `train`: `pipeline models train`, the fraud scorer's fit and the export for Triton;
- `anomaly_training`: the anomaly detector's fit, threshold and F1 on a holdout;
- `reference`: the training reference the drift monitor compares with.
"""
