import pytest

from exporters.label_config import LabelConfigError, parse_label_config

from ..conftest import SHAPES_CONFIG


def test_finds_tags_by_type_not_by_name():
    config = parse_label_config(SHAPES_CONFIG)
    assert (config.from_name, config.to_name, config.image_key) == ("boxes", "img", "picture")
    assert config.labels == ("Circle", "Square", "triangle")


def test_aliases_values_and_case_folding():
    config = parse_label_config(
        '<View><Image name="i" value="$image"/><RectangleLabels name="l" toName="i">'
        '<Label value="Vehicle" predicted_values="car, truck"/><Label value="Person"/></RectangleLabels></View>'
    )
    assert config.label_for("car") == "Vehicle"
    assert config.label_for("truck") == "Vehicle"
    assert config.label_for("Person") == "Person"
    assert config.label_for("person") == "Person"
    assert config.label_for("dog") is None


def test_skips_rectangles_not_pointing_to_an_image():
    config = parse_label_config(
        '<View><Text name="t" value="$text"/><RectangleLabels name="bad" toName="t"><Label value="A"/></RectangleLabels>'
        '<Image name="i" value="$url"/><RectangleLabels name="good" toName="i"><Label value="B"/></RectangleLabels></View>'
    )
    assert (config.from_name, config.image_key, config.labels) == ("good", "url", ("B",))


@pytest.mark.parametrize(
    "xml, message",
    [
        ("", "empty"),
        ("<View><Image", "not valid XML"),
        (
            '<View><Image name="i" value="$image"/><Choices name="c" toName="i"><Choice value="x"/></Choices></View>',
            "no <RectangleLabels>",
        ),
        ('<View><Image name="i" value="$image"/><RectangleLabels name="l" toName="i"/></View>', "no <Label>"),
        (
            '<View><Image name="i" value="image"/><RectangleLabels name="l" toName="i"><Label value="A"/></RectangleLabels></View>',
            "value=",
        ),
    ],
)
def test_bad_configs_get_clear_errors(xml, message):
    with pytest.raises(LabelConfigError, match=message):
        parse_label_config(xml)
