"""Fixtures: the float models of quant_models.py, built once per session."""
import pytest

from quant_models import (build_cnn, build_cnn_bn, build_elementwise, build_embedding_encoder, build_mlp,
                          build_zoo)


@pytest.fixture(scope="session")
def cnn():
    return build_cnn()


@pytest.fixture(scope="session")
def cnn_constants():
    return build_cnn(constants=True)


@pytest.fixture(scope="session")
def cnn_bn():
    return build_cnn_bn()


@pytest.fixture(scope="session")
def mlp():
    return build_mlp()


@pytest.fixture(scope="session")
def zoo():
    return build_zoo()


@pytest.fixture(scope="session")
def encoder():
    return build_embedding_encoder()


@pytest.fixture(scope="session")
def elementwise():
    return build_elementwise()
