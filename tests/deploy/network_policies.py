"""Kubernetes NetworkPolicy semantics, enough to ask of rendered manifests which pod may open a
connection to which port of which pod: a pod selected by no policy of a direction is open in that
direction; a selected one admits only what some rule of a selecting policy allows; a connection
needs the source's egress and the destination's ingress. ipBlock peers never match pods (they are
for addresses outside the cluster; the manifests' one ipBlock excludes the private ranges)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Pod:
    name: str
    namespace: str
    labels: Mapping[str, str]
    namespace_labels: Mapping[str, str]
    ports: Mapping[str, int] = field(default_factory=dict)  # named container ports


def selector_matches(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """A label selector; {} matches everything."""
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values") or []
        present = key in labels
        if operator == "In" and not (present and labels[key] in values):
            return False
        if operator == "NotIn" and present and labels[key] in values:
            return False
        if operator == "Exists" and not present:
            return False
        if operator == "DoesNotExist" and present:
            return False
    return True


def _peer_matches(peer: Mapping[str, Any], policy_namespace: str, pod: Pod) -> bool:
    if "ipBlock" in peer:
        return False
    namespace_selector = peer.get("namespaceSelector")
    if namespace_selector is None:
        in_namespace = pod.namespace == policy_namespace
    else:
        in_namespace = selector_matches(namespace_selector, pod.namespace_labels)
    pod_selector = peer.get("podSelector")
    return in_namespace and (pod_selector is None or selector_matches(pod_selector, pod.labels))


def _port_matches(rule_ports: Sequence[Mapping[str, Any]] | None, port: int, protocol: str, target: Pod) -> bool:
    if not rule_ports:
        return True
    for rule_port in rule_ports:
        if rule_port.get("protocol", "TCP") != protocol:
            continue
        wanted = rule_port.get("port")
        if wanted is None:
            return True
        number = target.ports.get(wanted) if isinstance(wanted, str) else wanted
        if number is not None and number <= port <= rule_port.get("endPort", number):
            return True
    return False


class Policies:
    def __init__(self, policies: Sequence[Mapping[str, Any]]) -> None:
        self._policies = policies

    def _selecting(self, pod: Pod, direction: str) -> list[Mapping[str, Any]]:
        selecting = []
        for policy in self._policies:
            spec = policy["spec"]
            types = spec.get("policyTypes") or (["Ingress", "Egress"] if "egress" in spec else ["Ingress"])
            if (policy["metadata"]["namespace"] == pod.namespace and direction in types
                    and selector_matches(spec["podSelector"], pod.labels)):
                selecting.append(policy)
        return selecting

    def _admits(self, selected: Pod, peer: Pod, port: int, protocol: str, direction: str, target: Pod) -> bool:
        policies = self._selecting(selected, direction)
        if not policies:
            return True
        rules_key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
        for policy in policies:
            namespace = policy["metadata"]["namespace"]
            for rule in policy["spec"].get(rules_key) or []:
                peers = rule.get(peers_key)
                if (not peers or any(_peer_matches(p, namespace, peer) for p in peers)) and \
                        _port_matches(rule.get("ports"), port, protocol, target):
                    return True
        return False

    def can_connect(self, source: Pod, destination: Pod, port: int, protocol: str = "TCP") -> bool:
        return (self._admits(source, destination, port, protocol, "Egress", destination)
                and self._admits(destination, source, port, protocol, "Ingress", destination))
