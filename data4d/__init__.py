"""Video data: the synthetic 4D world, pretraining streams, real-data readers."""

from data4d.preview import write_contact_sheet
from data4d.readers import DataError
from data4d.stream import PretrainStream
from data4d.world import SyntheticWorld

__all__ = ["DataError", "PretrainStream", "SyntheticWorld", "write_contact_sheet"]
