"""The rules of infra/policy_check.py on small hand-made plans: what each rule catches and what it lets through,
including the cases a real plan of this deployment never shows (existing resources, references across modules,
values unknown at plan time). No Terraform needed."""

from __future__ import annotations

import ipaddress
import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st


def _change(address: str, after: dict[str, Any], unknown: dict[str, Any] | None = None) -> dict[str, Any]:
    resource_type = address.split(".")[-2]
    return {
        "address": address,
        "mode": "managed",
        "type": resource_type,
        "change": {"actions": ["create"], "after": after, "after_unknown": unknown or {}},
    }


def _plan(*changes: dict[str, Any], configuration: dict[str, Any] | None = None) -> dict[str, Any]:
    plan: dict[str, Any] = {"format_version": "1.2", "resource_changes": list(changes)}
    if configuration is not None:
        plan["configuration"] = {"root_module": configuration}
    return plan


def _messages(policy_check, check: str, plan: dict[str, Any]) -> list[str]:
    return [v.message for v in policy_check.CHECKS[check](policy_check.Plan.load(plan))]


# --- wildcard actions ---------------------------------------------------------------------------------------------

SERVICES = st.sampled_from(["s3", "kms", "es", "batch", "logs", "sqs", "secretsmanager", "iam", "ec2"])
ACTION_NAMES = st.from_regex(r"[A-Z][A-Za-z]{2,30}", fullmatch=True)
RESOURCES = st.sampled_from(
    [
        "*",
        "arn:aws:s3:::lmindexer-prod-catalogue",
        "arn:aws:s3:::lmindexer-prod-catalogue/staged/*",
        "arn:aws:kms:eu-west-1:222222222222:key/1234abcd-12ab-34cd-56ef-1234567890ab",
        "arn:aws:es:eu-west-1:222222222222:domain/lmindexer-prod/*",
    ]
)


def _role_policy(statement: dict[str, Any]) -> dict[str, Any]:
    policy = json.dumps({"Version": "2012-10-17", "Statement": [statement]})
    return _plan(_change("aws_iam_role_policy.p", {"policy": policy}))


@given(service=SERVICES, name=ACTION_NAMES, resource=RESOURCES, data=st.data())
def test_a_wildcard_anywhere_in_an_allowed_action_fails_on_any_resource(
    policy_check, service: str, name: str, resource: str, data
) -> None:
    action = f"{service}:{name}"
    cut = data.draw(st.integers(min_value=0, max_value=len(action)))
    wildcard = data.draw(st.sampled_from(["*", "?"]))
    pattern = data.draw(st.sampled_from([action[:cut] + wildcard, action[:cut] + wildcard + action[cut:], "*"]))
    messages = _messages(
        policy_check,
        "iam_no_wildcard_admin",
        _role_policy({"Effect": "Allow", "Action": pattern, "Resource": resource}),
    )
    assert any(pattern in m and "name each action" in m for m in messages), messages


@given(service=SERVICES, names=st.lists(ACTION_NAMES, min_size=1, max_size=4), resource=RESOURCES)
def test_named_actions_pass_on_any_resource(policy_check, service: str, names: list[str], resource: str) -> None:
    statement = {"Effect": "Allow", "Action": [f"{service}:{n}" for n in names], "Resource": resource}
    assert _messages(policy_check, "iam_no_wildcard_admin", _role_policy(statement)) == []


def test_a_wildcard_deny_passes(policy_check) -> None:
    statement = {"Effect": "Deny", "Action": "s3:*", "Resource": "*", "Principal": "*"}
    assert _messages(policy_check, "iam_no_wildcard_admin", _role_policy(statement)) == []


# --- ingress from anywhere ----------------------------------------------------------------------------------------


def _ingress_forms(cidr: str) -> list[dict[str, Any]]:
    """The same ingress, written in each of the three resource shapes AWS offers."""
    v6 = ":" in cidr
    rule = {"protocol": "tcp", "from_port": 443, "to_port": 443}
    cidrs = {"ipv6_cidr_blocks" if v6 else "cidr_blocks": [cidr]}
    return [
        _plan(_change("aws_security_group.g", {"ingress": [{**rule, **cidrs}]})),
        _plan(_change("aws_security_group_rule.r", {"type": "ingress", **rule, **cidrs})),
        _plan(
            _change(
                "aws_vpc_security_group_ingress_rule.r",
                {"ip_protocol": "tcp", "from_port": 443, "to_port": 443, ("cidr_ipv6" if v6 else "cidr_ipv4"): cidr},
            )
        ),
    ]


@given(address=st.ip_addresses())
def test_ingress_from_the_whole_address_space_fails_in_every_form(policy_check, address) -> None:
    cidr = f"{address}/0"
    for plan in _ingress_forms(cidr):
        messages = _messages(policy_check, "sg_no_ingress_from_anywhere", plan)
        assert messages == [f"allows ingress from {cidr} (anywhere), tcp port 443"] or messages == [
            f"inline ingress rule 0: allows ingress from {cidr} (anywhere), tcp port 443"
        ], messages


@given(address=st.ip_addresses(), data=st.data())
def test_ingress_from_a_narrower_network_passes(policy_check, address, data) -> None:
    prefix = data.draw(st.integers(min_value=1, max_value=address.max_prefixlen))
    cidr = str(ipaddress.ip_network(f"{address}/{prefix}", strict=False))
    for plan in _ingress_forms(cidr):
        assert _messages(policy_check, "sg_no_ingress_from_anywhere", plan) == []


def test_egress_to_anywhere_passes(policy_check) -> None:
    plan = _plan(
        _change("aws_security_group_rule.out", {"type": "egress", "protocol": "-1", "cidr_blocks": ["0.0.0.0/0"]}),
        _change("aws_vpc_security_group_egress_rule.out", {"ip_protocol": "-1", "cidr_ipv4": "0.0.0.0/0"}),
        _change("aws_security_group.g", {"egress": [{"protocol": "-1", "cidr_blocks": ["0.0.0.0/0"]}], "ingress": []}),
    )
    assert _messages(policy_check, "sg_no_ingress_from_anywhere", plan) == []


def test_ingress_source_unknown_at_plan_time_fails(policy_check) -> None:
    configuration = {
        "resources": [{"address": "aws_vpc_security_group_ingress_rule.r", "expressions": {"cidr_ipv4": {}}}]
    }
    plan = _plan(
        _change("aws_vpc_security_group_ingress_rule.r", {"ip_protocol": "-1"}, {"cidr_ipv4": True}),
        configuration=configuration,
    )
    assert _messages(policy_check, "sg_no_ingress_from_anywhere", plan) == [
        "ingress source is not known at plan time, so it cannot be verified"
    ]


def test_group_without_inline_rules_passes_though_its_rule_set_is_computed(policy_check) -> None:
    configuration = {"resources": [{"address": "aws_security_group.g", "expressions": {"name": {}}}]}
    plan = _plan(_change("aws_security_group.g", {"name": "g"}, {"ingress": True}), configuration=configuration)
    assert _messages(policy_check, "sg_no_ingress_from_anywhere", plan) == []


def test_ingress_source_that_is_not_a_cidr_fails(policy_check) -> None:
    plan = _plan(_change("aws_vpc_security_group_ingress_rule.r", {"ip_protocol": "-1", "cidr_ipv4": "anywhere"}))
    assert _messages(policy_check, "sg_no_ingress_from_anywhere", plan) == ["'anywhere' is not a CIDR block"]


# --- GPU worker volumes -------------------------------------------------------------------------------------------

KEY_ARN = "arn:aws:kms:eu-west-1:222222222222:key/1234abcd-12ab-34cd-56ef-1234567890ab"


def _template(address: str = "aws_launch_template.t", **ebs: Any) -> dict[str, Any]:
    after = {
        "name": "workers",
        "id": "lt-0123456789abcdef0",
        "block_device_mappings": [{"device_name": "/dev/xvda", "ebs": [{"encrypted": "true", **ebs}]}],
    }
    return _change(address, after)


def _environment(
    launch_template: dict[str, Any] | None,
    address: str = "aws_batch_compute_environment.ce",
    compute_type: str = "EC2",
    unknown: dict[str, Any] | None = None,
) -> dict[str, Any]:
    spec = [launch_template] if launch_template is not None else []
    after = {"type": "MANAGED", "compute_resources": [{"type": compute_type, "launch_template": spec}]}
    return _change(address, after, {"compute_resources": [{"launch_template": [unknown or {}]}]})


def test_environment_using_an_existing_template_by_id_is_checked_against_it(policy_check) -> None:
    encrypted = _plan(_template(kms_key_id=KEY_ARN), _environment({"launch_template_id": "lt-0123456789abcdef0"}))
    assert _messages(policy_check, "batch_volumes_encrypted", encrypted) == []
    plain = _plan(_template(encrypted="false"), _environment({"launch_template_id": "lt-0123456789abcdef0"}))
    assert _messages(policy_check, "batch_volumes_encrypted", plain) == [
        "launch template of aws_batch_compute_environment.ce: /dev/xvda: EBS volume is not encrypted; "
        "set encrypted = true"
    ]


def test_environment_naming_a_template_outside_the_plan_fails(policy_check) -> None:
    plan = _plan(_template(kms_key_id=KEY_ARN), _environment({"launch_template_name": "someone-elses"}))
    assert _messages(policy_check, "batch_volumes_encrypted", plan) == [
        "launch template someone-elses is not in this plan, so its volumes cannot be verified"
    ]


def test_template_created_in_the_same_run_is_found_through_the_configuration(policy_check) -> None:
    def configuration(reference: str) -> dict[str, Any]:
        environment = {
            "address": "aws_batch_compute_environment.ce",
            "expressions": {
                "compute_resources": [{"launch_template": [{"launch_template_id": {"references": [reference]}}]}]
            },
        }
        return {"module_calls": {"workers": {"module": {"resources": [environment]}}}}

    changes = (
        _template("module.workers.aws_launch_template.t", encrypted="false"),
        _environment({}, "module.workers.aws_batch_compute_environment.ce", unknown={"launch_template_id": True}),
    )
    found = _plan(*changes, configuration=configuration("aws_launch_template.t.id"))
    assert _messages(policy_check, "batch_volumes_encrypted", found) == [
        "launch template of module.workers.aws_batch_compute_environment.ce: /dev/xvda: EBS volume is not "
        "encrypted; set encrypted = true"
    ]
    through_a_variable = _plan(*changes, configuration=configuration("var.launch_template_id"))
    assert [m.split(";")[0] for m in _messages(policy_check, "batch_volumes_encrypted", through_a_variable)] == [
        "its launch template cannot be identified in the plan"
    ]


@given(key=st.sampled_from(["alias/aws/ebs", "arn:aws:kms:eu-west-1:222222222222:alias/aws/ebs", None, ""]))
def test_volume_on_the_aws_managed_key_fails(policy_check, key: str | None) -> None:
    plan = _plan(_template(kms_key_id=key), _environment({"launch_template_name": "workers"}))
    (message,) = _messages(policy_check, "batch_volumes_encrypted", plan)
    assert "AWS-managed key" in message


def test_fargate_environment_needs_no_launch_template(policy_check) -> None:
    for compute_type in ("FARGATE", "FARGATE_SPOT"):
        plan = _plan(_environment(None, compute_type=compute_type))
        assert _messages(policy_check, "batch_volumes_encrypted", plan) == []
    assert _messages(policy_check, "batch_volumes_encrypted", _plan(_environment(None, compute_type="SPOT")))


# --- the Airflow UI -----------------------------------------------------------------------------------------------


def _mwaa(configured: bool, after: dict[str, Any], unknown: dict[str, Any]) -> dict[str, Any]:
    expressions = {"name": {}, **({"webserver_access_mode": {}} if configured else {})}
    configuration = {"resources": [{"address": "aws_mwaa_environment.a", "expressions": expressions}]}
    return _plan(_change("aws_mwaa_environment.a", after, unknown), configuration=configuration)


def test_airflow_ui_left_to_the_mwaa_default_passes(policy_check) -> None:
    plan = _mwaa(False, {"name": "a"}, {"webserver_access_mode": True})
    assert _messages(policy_check, "airflow_ui_private", plan) == []


def test_airflow_ui_access_set_to_a_value_unknown_at_plan_time_fails(policy_check) -> None:
    plan = _mwaa(True, {"name": "a"}, {"webserver_access_mode": True})
    assert _messages(policy_check, "airflow_ui_private", plan) == ["webserver_access_mode is not known at plan time"]
