"""EPE, >1px, >3px and Fl-all on hand-made flows whose values are worked out by hand."""

import math

import numpy as np
import pytest

from vpt.metrics.flow import endpoint_error, flow_errors


def field(dx: float, dy: float, shape=(2, 4, 5)) -> np.ndarray:
    return np.broadcast_to(np.array([dx, dy], np.float32), (*shape, 2)).copy()


def test_identical_flows_have_no_error():
    flow = np.random.default_rng(0).normal(0, 5, (3, 6, 7, 2)).astype(np.float32)
    assert flow_errors(flow, flow) == {"epe": 0.0, "over_1px": 0.0, "over_3px": 0.0, "fl_all": 0.0, "pixels": 126}


def test_a_constant_offset_of_3_4_is_5_pixels_off_everywhere():
    # |(3, 4)| = 5 > 3 px, and 5 > 5 % of |g| for every reference below 100 px
    assert flow_errors(field(3, 4), field(0, 0)) == {"epe": 5.0, "over_1px": 1.0, "over_3px": 1.0, "fl_all": 1.0,
                                                     "pixels": 40}
    assert flow_errors(field(63, 4), field(60, 0))["fl_all"] == 1.0  # 5 > 0.05 * 60 = 3


def test_fl_all_forgives_errors_within_5_percent_of_large_motions():
    # error 5 against |g| = 100: 5 > 3 px but not > 0.05 * 100 = 5 (strict, as KITTI's devkit)
    assert flow_errors(field(103, 4), field(100, 0)) == {"epe": 5.0, "over_1px": 1.0, "over_3px": 1.0, "fl_all": 0.0,
                                                         "pixels": 40}
    # error 5 against |g| = 200: within 2.5 %
    assert flow_errors(field(203, 4), field(200, 0))["fl_all"] == 0.0


def test_rates_count_pixels_strictly_above_each_threshold():
    reference = np.zeros((1, 1, 4, 2), np.float32)
    flow = np.array([[[[0.5, 0], [1, 0], [2, 0], [3.5, 0]]]], np.float32)  # errors 0.5, 1, 2, 3.5
    values = flow_errors(flow, reference)
    assert values == {"epe": pytest.approx(7 / 4), "over_1px": 0.5, "over_3px": 0.25, "fl_all": 0.25, "pixels": 4}
    np.testing.assert_array_equal(endpoint_error(flow, reference), [[[0.5, 1, 2, 3.5]]])


def test_a_mask_keeps_only_the_valid_pixels():
    reference = field(0, 0, (2, 2, 2))
    flow = reference.copy()
    flow[0] = (3, 4)  # first pair off by 5, second exact
    valid = np.zeros((2, 2, 2), np.uint8)
    assert flow_errors(flow, reference)["epe"] == 2.5
    valid[1] = 1
    assert flow_errors(flow, reference, valid) == {"epe": 0.0, "over_1px": 0.0, "over_3px": 0.0, "fl_all": 0.0,
                                                   "pixels": 4}
    valid[0, 0, 0] = 1  # one bad pixel among five
    assert flow_errors(flow, reference, valid.astype(bool)) == {"epe": 1.0, "over_1px": 0.2, "over_3px": 0.2,
                                                                "fl_all": 0.2, "pixels": 5}


def test_no_valid_pixel_gives_nan_and_zero_pixels():
    values = flow_errors(field(1, 1), field(0, 0), np.zeros((2, 4, 5), bool))
    assert values["pixels"] == 0 and all(math.isnan(values[name]) for name in ("epe", "over_1px", "over_3px", "fl_all"))


def test_mismatched_shapes_are_a_programming_error():
    with pytest.raises(ValueError, match="one shape"):
        flow_errors(field(0, 0, (2, 4, 5)), field(0, 0, (2, 4, 4)))
    with pytest.raises(ValueError, match="valid must have shape"):
        flow_errors(field(0, 0), field(0, 0), np.ones((2, 4), bool))
