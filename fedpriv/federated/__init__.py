"""Federated simulation: the client function, client backends, FedSGD/FedAvg rounds."""

from fedpriv.federated.clients import CLIENT_BACKENDS, for_each_client
from fedpriv.federated.local_sgd import LocalTrainingConfig, make_client_update, masked_mean_loss
from fedpriv.federated.server import (ServerState, aggregate, client_weights, init_server_state,
                                      make_round, make_server_optimizer)
from fedpriv.federated.training import FederatedConfig, TrainingResult, sample_clients, train

__all__ = [
    "CLIENT_BACKENDS", "FederatedConfig", "LocalTrainingConfig", "ServerState", "TrainingResult",
    "aggregate", "client_weights", "for_each_client", "init_server_state", "make_client_update",
    "make_round", "make_server_optimizer", "masked_mean_loss", "sample_clients", "train",
]
