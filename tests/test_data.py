import numpy as np
import pytest

from stretto.data import shapes


def test_same_seed_same_data():
    a, pa, _ = shapes.make_batch(3, 8)
    b, pb, _ = shapes.make_batch(3, 8)
    c, _, _ = shapes.make_batch(4, 8)
    assert pa == pb and np.array_equal(a.numpy(), b.numpy())
    assert not np.array_equal(a.numpy(), c.numpy())
    assert a.shape == (8, 3, 32, 32) and a.min() >= -1 and a.max() <= 1


def test_every_prompt_parses_back_to_its_scene():
    prompts = shapes.all_prompts()
    assert len(prompts) == 2 * 6 * 3 * 5 + 2 * 18 * 17
    for p in prompts:
        assert shapes.scene_prompt(shapes.parse_prompt(p)) == p


def test_generated_prompts_match_their_scenes():
    _, prompts, scenes = shapes.make_batch(0, 64)
    assert [shapes.parse_prompt(p) for p in prompts] == scenes
    assert any(s.is_pair for s in scenes) and any(not s.is_pair for s in scenes)


def test_both_phrasings_of_a_pair_are_one_scene():
    a = shapes.parse_prompt("a red circle left of a blue square")
    b = shapes.parse_prompt("a blue square right of a red circle")
    assert a == b and a.layout == "horizontal" and a.objects[0].color == "red"
    c = shapes.parse_prompt("a red circle below a blue square")
    assert c.layout == "vertical" and c.objects[0].color == "blue"


def test_unknown_word_lists_the_vocabulary():
    with pytest.raises(shapes.PromptError, match=r"unknown prompt word\(s\) \['hexagon'\].*vocabulary is: a above"):
        shapes.parse_prompt("a red hexagon on the left")


def test_unparseable_prompt_says_the_grammar():
    with pytest.raises(shapes.PromptError, match="cannot parse"):
        shapes.parse_prompt("red red red")
