"""Several replicas of one service as one channel target, or a clear refusal of a list that can't work."""

from __future__ import annotations

import pytest

from services.common.errors import ConfigurationError
from services.common.internal_client import replicas_target


def test_one_address_or_a_name_passes_through_and_ip_lists_get_their_scheme():
    assert replicas_target("trainer:50051") == "trainer:50051"
    assert replicas_target("dns:///trainer:50051") == "dns:///trainer:50051"
    assert replicas_target("10.0.0.1:5, 10.0.0.2:5") == "ipv4:10.0.0.1:5,10.0.0.2:5"
    assert replicas_target("[::1]:5,[::2]:5") == "ipv6:[::1]:5,[::2]:5"


@pytest.mark.parametrize("addresses", ["a:1,b:2", "10.0.0.1:1,[::1]:2", "10.0.0.1,10.0.0.2:3"])
def test_a_list_of_names_mixed_families_or_missing_ports_is_refused_saying_what_works(addresses):
    with pytest.raises(ConfigurationError) as refused:
        replicas_target(addresses)
    assert "dns:///" in str(refused.value) or "one kind" in str(refused.value)
