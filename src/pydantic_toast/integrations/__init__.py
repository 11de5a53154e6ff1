"""Claim-check adapters: big values travel through a framework as references to a store.

One module per framework, each behind its own extra; importing `pydantic_toast` imports none of
them, and importing one whose framework is missing raises `MissingDependencyError` with the
`pip install` line:

- `pydantic_toast.integrations.celery`      `pip install "pydantic-toast[celery]"`
- `pydantic_toast.integrations.temporal`    `pip install "pydantic-toast[temporal]"`
- `pydantic_toast.integrations.langgraph`   `pip install "pydantic-toast[langgraph]"`
- `pydantic_toast.integrations.faststream`  `pip install "pydantic-toast[faststream]"`
"""
