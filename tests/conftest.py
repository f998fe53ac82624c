"""Fixtures of every area's tests: the devices, the seed, and the hypothesis profiles
(SPARSEDISTILL_HYPOTHESIS=long runs the property tests with many more examples)."""
import os

import pytest
import torch
from hypothesis import HealthCheck, settings

import sparsedistill  # noqa: F401  (registers the ops)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

settings.register_profile("default", max_examples=30, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.register_profile("long", max_examples=1000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.load_profile(os.environ.get("SPARSEDISTILL_HYPOTHESIS", "default"))


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
