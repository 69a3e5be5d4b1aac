"""Each grid primitive and object operation of the program-search lane on tiny hand-made grids."""

import numpy as np

from submission.arc.grids import as_grid
from submission.lane import objects as ob
from submission.lane import primitives as pr


def test_dihedral_names_match_the_grids():
    g = as_grid([[1, 2, 3], [4, 5, 6]])
    by_name = {n: pr.dihedral(g, k) for k, n in enumerate(pr.DIHEDRAL_NAMES)}
    assert by_name["flip_lr"].tolist() == [[3, 2, 1], [6, 5, 4]]
    assert by_name["flip_ud"].tolist() == [[4, 5, 6], [1, 2, 3]]
    assert by_name["transpose"].tolist() == [[1, 4], [2, 5], [3, 6]]
    assert by_name["rot180"].tolist() == [[6, 5, 4], [3, 2, 1]]


def test_background_and_crop_to_content():
    g = as_grid([[0, 0, 0, 0], [0, 3, 0, 0], [0, 0, 4, 0], [0, 0, 0, 0]])
    assert pr.background(g) == 0
    assert pr.crop_to_content(g, 0).tolist() == [[3, 0], [0, 4]]
    assert pr.crop_to_content(np.zeros((2, 2), np.uint8), 0) is None


def test_shift_fills_vacated_cells():
    g = as_grid([[1, 2], [3, 4]])
    assert pr.shift(g, 1, 0, 0).tolist() == [[0, 0], [1, 2]]
    assert pr.shift(g, 0, -1, 9).tolist() == [[2, 9], [4, 9]]


def test_scale_up_and_down_are_inverse_and_down_needs_uniform_blocks():
    g = as_grid([[1, 2], [3, 4]])
    big = pr.scale_up(g, 2, 3)
    assert big.shape == (4, 6) and big[1, 2] == 1 and big[3, 5] == 4
    assert np.array_equal(pr.scale_down(big, 2, 3), g)
    big[0, 0] = 7
    assert pr.scale_down(big, 2, 3) is None
    assert pr.scale_up(np.zeros((16, 16), np.uint8), 2, 2) is None  # over 30 cells wide


def test_tile_and_tile_pattern():
    g = as_grid([[1, 2]])
    assert pr.tile(g, 2, 2).tolist() == [[1, 2, 1, 2], [1, 2, 1, 2]]
    flip_lr = pr.DIHEDRAL_NAMES.index("flip_lr")
    assert pr.tile_pattern(g, ((0, flip_lr), (-1, 0))).tolist() == [[1, 2, 2, 1], [0, 0, 1, 2]]
    assert pr.tile_pattern(g, ((1,),)) is None  # a rotation changes a 1x2 block's shape


def test_gravity_each_direction():
    g = as_grid([[1, 0, 0], [0, 0, 2], [0, 3, 0]])
    assert pr.gravity(g, 0, 0).tolist() == [[0, 0, 0], [0, 0, 0], [1, 3, 2]]
    assert pr.gravity(g, 1, 0).tolist() == [[1, 3, 2], [0, 0, 0], [0, 0, 0]]
    assert pr.gravity(g, 2, 0).tolist() == [[1, 0, 0], [2, 0, 0], [3, 0, 0]]
    assert pr.gravity(g, 3, 0).tolist() == [[0, 0, 1], [0, 0, 2], [0, 0, 3]]


def test_fill_enclosed_only_fills_closed_regions():
    g = as_grid([[1, 1, 1, 0], [1, 0, 1, 0], [1, 1, 1, 0]])
    assert pr.fill_enclosed(g, 0, 4).tolist() == [[1, 1, 1, 0], [1, 4, 1, 0], [1, 1, 1, 0]]
    assert pr.fill_enclosed(as_grid([[1, 0], [0, 0]]), 0, 4) is None


def test_draw_lines_directions_and_stop():
    g = np.zeros((4, 5), np.uint8)
    g[1, 2], g[1, 4] = 5, 3
    right_stop = pr.draw_lines(g, 5, "right", 0, True)
    assert right_stop[1].tolist() == [0, 0, 5, 5, 3]
    left = pr.draw_lines(g, 5, "left", 0, False)
    assert left[1].tolist() == [5, 5, 5, 0, 3]
    down = pr.draw_lines(g, 5, "down", 0, False)
    assert down[:, 2].tolist() == [0, 5, 5, 5]
    diag = pr.draw_lines(g, 5, "diagonal", 0, False)
    assert diag[0, 1] == diag[0, 3] == diag[2, 1] == diag[3, 0] == diag[3, 4] == 5
    assert pr.draw_lines(g, 7, "up", 0, False) is None


def test_complete_symmetry_fills_masked_cells_from_mirror_images():
    full = as_grid([[1, 2, 2, 1], [3, 4, 4, 3], [3, 4, 4, 3], [1, 2, 2, 1]])
    masked = full.copy()
    masked[0:2, 0:2] = 9
    assert np.array_equal(pr.complete_symmetry(masked, 9), full)
    assert pr.symmetry_patch(masked, 9).tolist() == [[1, 2], [3, 4]]
    assert pr.complete_symmetry(full, 9) is None


def test_components_by_colour_and_neighbourhood():
    g = as_grid([[1, 0, 2], [0, 1, 2], [0, 0, 0]])
    assert len(ob.components(g, 0, diag=False, by_colour=True)) == 3
    assert len(ob.components(g, 0, diag=True, by_colour=True)) == 2
    multi = ob.components(g, 0, diag=True, by_colour=False)
    assert len(multi) == 1 and multi[0].size == 4 and multi[0].n_colours == 2
    obj = ob.components(g, 0, diag=False, by_colour=True)[1]
    assert (obj.top, obj.left, obj.bottom, obj.right, obj.colour) == (0, 2, 2, 3, 2)


def test_select_extract_and_keep_only():
    g = as_grid([[3, 3, 0, 0], [3, 3, 0, 5], [0, 0, 0, 0], [6, 0, 0, 0]])
    assert ob.select(g, 0, False, True, "largest").colour == 3
    assert ob.extract(g, 0, False, True, "largest", False).tolist() == [[3, 3], [3, 3]]
    assert ob.select(g, 0, False, True, "smallest") is None  # two objects of size 1: no unique
    kept = ob.keep_only(g, 0, False, True, "largest")
    assert kept.tolist() == [[3, 3, 0, 0], [3, 3, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    assert ob.extract(g, 0, False, True, "unique_colour", False) is None  # all colours unique


def test_object_features_hole_and_rank():
    g = as_grid([[2, 2, 2, 0, 0], [2, 0, 2, 0, 4], [2, 2, 2, 0, 0]])
    objs = ob.components(g, 0, False, False)
    ring, dot = objs
    f = ob.object_features(g, ring, objs)
    assert f["has_hole"] and f["size"] == 8 and f["size_rank_desc"] == 0
    assert not ob.object_features(g, dot, objs)["has_hole"]


def test_complete_period_fills_from_smallest_repeating_tile():
    full = np.tile(as_grid([[1, 2, 3], [3, 1, 2]]), (2, 3))
    masked = full.copy()
    masked[1:3, 2:5] = 0
    assert np.array_equal(pr.complete_period(masked, 0), full)
    stripes = np.array([[(y + x) % 3 + 1 for x in range(7)] for y in range(7)], np.uint8)
    holed = stripes.copy()
    holed[3, 3] = 0
    assert np.array_equal(pr.complete_period(holed, 0), stripes)
    assert pr.complete_period(full, 0) is None  # nothing masked


def test_connect_joins_pairs_in_rows_and_columns_over_background_only():
    g = as_grid([[8, 0, 0, 8], [0, 0, 0, 0], [8, 0, 5, 0]])
    out = pr.connect(g, 8, 3, 0)
    assert out.tolist() == [[8, 3, 3, 8], [3, 0, 0, 0], [8, 0, 5, 0]]
    assert pr.connect(as_grid([[8, 5, 8]]), 8, 3, 0) is None  # something lies between


def test_crop_to_colour_trim_and_block_reduce():
    g = as_grid([[0, 0, 0, 0], [0, 4, 1, 0], [0, 1, 4, 0], [0, 0, 0, 0]])
    assert pr.crop_to_colour(g, 4).tolist() == [[4, 1], [1, 4]]
    assert pr.trim(g).tolist() == [[4, 1], [1, 4]]
    blocks = as_grid([[0, 2, 5, 0, 0], [2, 2, 5, 0, 3], [5, 5, 5, 5, 5], [0, 0, 5, 7, 0]])
    assert pr.block_reduce(blocks, 0).tolist() == [[2, 3], [0, 7]]
    assert pr.block_reduce(as_grid([[1, 2], [3, 4]]), 0) is None  # no separator lines


def test_symmetrize_overlays_a_mirror_image_on_background():
    g = as_grid([[1, 0, 0], [2, 3, 0]])
    flip_lr = pr.DIHEDRAL_NAMES.index("flip_lr")
    assert pr.symmetrize(g, flip_lr, 0).tolist() == [[1, 0, 1], [2, 3, 2]]
    assert pr.symmetrize(g, pr.DIHEDRAL_NAMES.index("rot90"), 0) is None  # shape changes


def test_symmetrize_group_completes_to_a_fixpoint_and_refuses_conflicts():
    # one quarter given; the rotations fill the other three in more than one pass
    g = as_grid([[1, 2, 0, 0], [3, 4, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    full = pr.symmetrize_group(g, "rotations", 0)
    assert all(np.array_equal(pr.dihedral(full, k), full) for k in (1, 2, 3))
    assert (full != 0).all() and np.array_equal(full[:2, :2], g[:2, :2])
    # one flip_lr pass leaves the bottom half empty; the flips group fills it
    flips = pr.symmetrize_group(g, "flips", 0)
    assert flips.tolist() == [[1, 2, 2, 1], [3, 4, 4, 3], [3, 4, 4, 3], [1, 2, 2, 1]]
    # images disagree on a background cell: no completion
    clash = as_grid([[1, 0, 2], [0, 0, 0], [0, 0, 0]])
    assert pr.symmetrize_group(clash, "flips", 0) is None
    assert pr.symmetrize_group(as_grid([[1, 0, 0]]), "rotations", 0) is None  # shape changes
    assert pr.symmetrize_group(as_grid([[1, 1], [1, 1]]), "all", 0) is None  # nothing to fill


def test_invariant_maps_are_those_every_grid_keeps():
    sym = as_grid([[1, 2, 1], [2, 3, 2], [1, 2, 1]])
    assert pr.invariant_maps([sym]) == tuple(range(1, 8))
    lr_only = as_grid([[1, 2, 1], [3, 4, 3]])
    assert pr.invariant_maps([lr_only]) == (pr.DIHEDRAL_NAMES.index("flip_lr"),)
    assert pr.invariant_maps([sym, lr_only]) == (pr.DIHEDRAL_NAMES.index("flip_lr"),)
