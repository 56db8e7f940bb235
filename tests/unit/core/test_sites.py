import pytest

from vlmlens import Site
from vlmlens.errors import SiteNotFoundError
from vlmlens.sites import BLOCK_POINTS, TEXT_ONLY_POINTS, Point, Tower, site_names


@pytest.mark.parametrize(
    "name",
    [
        "text.hook_embed",
        "text.blocks.3.hook_resid_pre",
        "text.blocks.0.hook_resid_mid",
        "text.blocks.12.hook_resid_post",
        "text.blocks.1.attn.hook_q",
        "text.blocks.1.attn.hook_pattern",
        "text.blocks.1.attn.hook_result",
        "text.blocks.1.mlp.hook_post",
        "text.ln_final.hook_normalized",
        "vision.hook_embed",
        "vision.blocks.0.attn.hook_z",
        "projector.hook_in",
        "projector.hook_out",
    ],
)
def test_parse_round_trips(name):
    site = Site.parse(name)
    assert str(site) == name
    assert Site.parse(site) is site


def test_site_fields_and_short_names():
    site = Site.block("text", "pattern", 2)
    assert site == Site(Tower.TEXT, Point.PATTERN, 2)
    assert site.short == "pattern" and site.per_head
    assert str(site) == "text.blocks.2.attn.hook_pattern"


def test_unknown_site_names_closest():
    with pytest.raises(SiteNotFoundError, match=r"unknown site 'text.blocks.3.hook_resid_psot'.*text.blocks.3.hook_resid_post"):
        Site.parse("text.blocks.3.hook_resid_psot")


def test_unknown_tower_point():
    with pytest.raises(SiteNotFoundError, match="tower 'projector' has no point 'embed'"):
        Site("projector", "embed")
    with pytest.raises(SiteNotFoundError, match="needs a layer index >= 0"):
        Site("text", "resid_post")
    with pytest.raises(SiteNotFoundError, match="unknown point 'resid_pots'.*closest: resid_post"):
        Site("text", "resid_pots", 1)


def test_site_names_count_and_order():
    sites = site_names(3, 2)
    vision_block = len(BLOCK_POINTS) - len(TEXT_ONLY_POINTS)  # no rotary q/k or RMSNorm scales there
    assert len(sites) == len(set(sites)) == 1 + 2 * vision_block + 2 + 1 + 3 * len(BLOCK_POINTS) + 2
    assert sites[-2] == Site.parse("ln_final.hook_scale")
    assert sites[0] == Site.parse("vision.hook_embed")
    assert sites[-1] == Site.parse("text.ln_final.hook_normalized")
