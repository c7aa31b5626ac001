"""Tools around the pipeline rather than stages of it: the local stack and what drives it.

- `stack`: real Kafka and Triton from `deploy/`, topics, features, the model, worker and bridge processes;
- `demo`: `pipeline demo`, a demo stream through the stack and a summary;
- `traffic`: request messages, valid ones and each kind of bad input;
- `probe`: publishes requests and reads back what the pipeline committed, as a user would.
"""
