"""The synchronous HTTP bridge: a request in, the pipeline's result for it out.

- `app`: `pipeline gateway`, the FastAPI routes and a fast path for valid `POST /v1/predict`;
- `bridge`: publishes a request with its reply addresses and awaits the answer;
- `answer_server`, `replies`, `reply_assignor`: answers straight from workers, or from the replies
  partition this instance claims through a consumer group;
- `auth`, `limits`: API keys, rate limits, the in-flight bound and the body limit;
- `refusals`: every HTTP error in the contract's shape; the content-type rule and JSON body parsing.
"""
