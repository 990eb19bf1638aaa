"""Federated simulation: the client function, client backends, FedSGD/FedAvg rounds, training."""

from fedpriv.federated.checkpoints import CheckpointConfig, CheckpointMismatchError, RoundCheckpoints
from fedpriv.federated.client_mesh import ClientPlacement, client_mesh
from fedpriv.federated.clients import CLIENT_BACKENDS, for_each_client
from fedpriv.federated.distributed import DistributedConfig, initialize_distributed
from fedpriv.federated.local_sgd import ClientReport, LocalTrainingConfig, make_client_update, masked_mean_loss
from fedpriv.federated.rounds import (RoundOutcome, ServerState, init_server_state, initial_stage_states, make_round,
                                      make_server_optimizer)
from fedpriv.federated.training import (FederatedConfig, Federation, TrainingHooks, TrainingKeys, TrainingResult,
                                        sample_clients, train)

__all__ = [
    "CLIENT_BACKENDS", "CheckpointConfig", "CheckpointMismatchError", "ClientPlacement", "ClientReport",
    "DistributedConfig", "FederatedConfig", "Federation", "LocalTrainingConfig", "RoundCheckpoints",
    "RoundOutcome", "ServerState", "TrainingHooks", "TrainingKeys", "TrainingResult", "client_mesh",
    "for_each_client", "init_server_state", "initial_stage_states", "initialize_distributed",
    "make_client_update", "make_round", "make_server_optimizer", "masked_mean_loss", "sample_clients", "train",
]
