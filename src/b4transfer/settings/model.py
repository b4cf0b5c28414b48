"""``model``: the timm backbone (``conf/model/*.yaml``)."""

from dataclasses import dataclass

from b4transfer.settings.schema import Schema, absent, given


@dataclass
class ModelSettings(Schema):
    """The backbone: timm name, where its weights come from, its regularisation and speed options."""

    DEFAULTS = ("model/efficientnet_b4.yaml", "")

    name: str = given()  # timm name[.pretrained tag]
    pretrained: bool = given()  # weights from the Hugging Face hub / its cache
    weights: str | None = given()  # or a local state dict
    drop_rate: float = given()  # dropout before the classifier
    drop_path_rate: float = given()  # stochastic depth
    channels_last: bool = given()
    compile: bool = given()
    compile_mode: str = given()
    hub_timeout: float | None = absent()  # seconds to wait for the hub (+model.hub_timeout=10)
