"""The LSTM: network, training, model registry on disk, and the batched predictor."""

from bot.model.card import ModelCard
from bot.model.network import LSTMForecaster
from bot.model.predictor import Predictor, resolve_device
from bot.model.registry import LoadedModel, check_compatible, latest_version, load_model, save_model
from bot.strategy import Prediction  # re-exported where it used to live

__all__ = [
    "LSTMForecaster",
    "LoadedModel",
    "ModelCard",
    "Prediction",
    "Predictor",
    "check_compatible",
    "latest_version",
    "load_model",
    "resolve_device",
    "save_model",
]
