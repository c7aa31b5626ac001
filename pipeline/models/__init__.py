"""The models: their networks, training and export into the Triton model repository.

- `fraud_scorer`: the network, with input scaling inside the TorchScript module;
- `spec`: what a served model needs from a request, read from its `config.pbtxt`;
- `train`: `pipeline models train`, fit on synthetic data, export for Triton.
"""
