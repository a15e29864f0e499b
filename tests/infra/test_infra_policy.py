"""Security properties of the deployment, asserted on offline Terraform plans.

The real configuration (both example environments) must pass every check in infra/policy_check.py; a deliberately
insecure configuration (fixtures/insecure) and targeted mutations of the real plan must make each check fail.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

INFRA = Path(__file__).resolve().parents[2] / "infra"
FIXTURES = Path(__file__).resolve().parent / "fixtures"

ENVIRONMENTS = sorted(p.stem for p in (INFRA / "environments").glob("*.tfvars"))

# Actions that AWS does not scope to resources; the only ones allowed on Resource "*".
UNSCOPED_ACTIONS = {
    "s3:GetAccountPublicAccessBlock",
    "logs:DescribeLogGroups",
    "cloudwatch:PutMetricData",
    "batch:DescribeJobs",
    "batch:ListJobs",
}


@pytest.fixture(scope="module")
def env_plans(planner: Callable[..., dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {env: planner(INFRA, f"environments/{env}.tfvars") for env in ENVIRONMENTS}


@pytest.fixture(scope="module")
def prod_plan(env_plans: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return env_plans["prod"]


@pytest.fixture(scope="module")
def insecure_plan(planner: Callable[..., dict[str, Any]]) -> dict[str, Any]:
    return planner(FIXTURES / "insecure")


def failing(results: dict[str, list[Any]]) -> set[str]:
    return {name for name, violations in results.items() if violations}


# --- the real configuration ---------------------------------------------------------------------------------------


def test_example_environments_exist() -> None:
    assert {"dev", "prod"} <= set(ENVIRONMENTS)


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_environment_plan_passes_every_check(env: str, env_plans: dict[str, dict[str, Any]], policy_check) -> None:
    results = policy_check.run_checks(env_plans[env])
    assert set(results) == set(policy_check.CHECKS)
    problems = [str(v) for violations in results.values() for v in violations]
    assert not problems, "\n".join(problems)


def test_public_airflow_ui_is_refused_at_plan_time(planner: Callable[..., dict[str, Any]]) -> None:
    with pytest.raises(AssertionError, match="mwaa_webserver_access_mode must be PRIVATE_ONLY"):
        planner(INFRA, "environments/dev.tfvars", {"mwaa_webserver_access_mode": "PUBLIC_ONLY"})


def test_plan_contains_what_the_checks_cover(prod_plan: dict[str, Any], policy_check) -> None:
    """Guard against passing vacuously: the plan has the buckets, the domain and known IAM policies."""
    plan = policy_check.Plan.load(prod_plan)
    assert len(plan.of_type("aws_s3_bucket")) == 2
    for settings in (
        "aws_s3_bucket_public_access_block",
        "aws_s3_bucket_server_side_encryption_configuration",
        "aws_s3_bucket_policy",
        "aws_s3_bucket_versioning",
    ):
        assert len(plan.of_type(settings)) == 2, settings
    assert len(plan.of_type("aws_opensearch_domain")) == 1
    assert len(plan.of_type("aws_mwaa_environment")) == 1
    assert len(plan.of_type("aws_batch_job_queue")) == 1
    (environment,) = plan.of_type("aws_batch_compute_environment")
    assert environment.block("compute_resources")["type"] in {"EC2", "SPOT"}
    (template,) = plan.of_type("aws_launch_template")
    assert [m["ebs"][0]["encrypted"] for m in template.after["block_device_mappings"]] == ["true"]
    assert len(plan.of_type("aws_security_group")) >= 4
    assert len(plan.of_type("aws_vpc_security_group_ingress_rule")) >= 2
    documents = list(policy_check.policy_documents(plan))
    role_policies = [d for r, _, d, _ in documents if r.type == "aws_iam_role_policy"]
    assert len(role_policies) >= 3  # execution role, indexer job role, flow logs role
    assert all(problem is None for _, _, _, problem in documents)


def _statements_of(plan: Any, address_part: str, policy_check) -> list[dict[str, Any]]:
    found = [
        d
        for r, attribute, d, _ in policy_check.policy_documents(plan)
        if address_part in r.address and attribute == "policy"
    ]
    assert len(found) == 1, address_part
    return found[0]["Statement"]


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def test_identity_policies_use_resource_wildcard_only_for_unscoped_actions(prod_plan, policy_check) -> None:
    plan = policy_check.Plan.load(prod_plan)
    for resource, _attribute, document, _ in policy_check.policy_documents(plan):
        if resource.type != "aws_iam_role_policy":
            continue
        for statement in document["Statement"]:
            if "*" in _as_list(statement["Resource"]):
                assert set(_as_list(statement["Action"])) <= UNSCOPED_ACTIONS, (resource.address, statement)


def test_roles_reach_only_their_bucket_prefixes(prod_plan, policy_check) -> None:
    plan = policy_check.Plan.load(prod_plan)
    catalogue = next(
        r.after["bucket"] for r in plan.of_type("aws_s3_bucket") if r.after["bucket"].endswith("-catalogue")
    )
    prefix_arn = f"arn:aws:s3:::{catalogue}/"

    def object_access(address_part: str) -> dict[str, set[str]]:
        access: dict[str, set[str]] = {}
        for statement in _statements_of(plan, address_part, policy_check):
            for arn in _as_list(statement["Resource"]):
                if arn.startswith(prefix_arn):
                    prefix = arn[len(prefix_arn) :].split("/")[0] + "/"
                    access.setdefault(prefix, set()).update(_as_list(statement["Action"]))
        return access

    airflow = object_access("module.orchestration.aws_iam_role_policy.execution")
    assert "s3:PutObject" not in airflow["incoming/"]
    assert {"s3:PutObject"} <= airflow["quarantine/"] & airflow["staged/"] & airflow["state/"]
    assert "s3:PutObject" not in airflow["models/"] | airflow["ids/"]

    job = object_access("module.gpu_workers.aws_iam_role_policy.job")
    assert set(job) == {"staged/", "models/", "ids/"}
    assert "s3:PutObject" not in job["staged/"]
    assert {"s3:PutObject"} <= job["models/"] & job["ids/"]
    assert not any("s3:DeleteObject" in actions for actions in job.values())


def test_search_master_user_is_an_iam_role_not_a_password(prod_plan, policy_check) -> None:
    (domain,) = policy_check.Plan.load(prod_plan).of_type("aws_opensearch_domain")
    master = domain.block("advanced_security_options")["master_user_options"][0]
    assert master["master_user_arn"].startswith("arn:aws:iam::222222222222:role/")
    assert not master.get("master_user_password")
    assert domain.block("advanced_security_options")["internal_user_database_enabled"] is False


def test_lifecycle_rules_cover_quarantine_and_staged(prod_plan, policy_check) -> None:
    plan = policy_check.Plan.load(prod_plan)
    (catalogue,) = [r for r in plan.of_type("aws_s3_bucket_lifecycle_configuration") if "catalogue" in r.address]
    expiring = {
        rule["filter"][0]["prefix"]: rule["expiration"][0]["days"]
        for rule in catalogue.after["rule"]
        if rule["filter"] and rule["filter"][0].get("prefix") and rule["expiration"]
    }
    assert expiring == {"quarantine/": 90, "staged/": 30}


# --- a deliberately insecure configuration --------------------------------------------------------------------


def test_insecure_plan_fails_every_check(insecure_plan: dict[str, Any], policy_check) -> None:
    assert failing(policy_check.run_checks(insecure_plan)) == set(policy_check.CHECKS)


INSECURE_FINDINGS = {
    "s3_public_access_blocked": ["block_public_acls", "insecure-fixture-bare-bucket has no public access block"],
    "s3_no_public_grants": ["public-read", 'policy allows everyone (Principal "*")'],
    "s3_encrypted_with_kms": ["AES256, not SSE-KMS", "insecure-fixture-bare-bucket has no default encryption"],
    "s3_tls_only": ["insecure-fixture-open-bucket has no policy denying", "insecure-fixture-bare-bucket has no policy"],
    "opensearch_encrypted": ["encryption at rest is not enabled", "node-to-node encryption is not enabled"],
    "opensearch_https_only": ["HTTPS is not enforced", "Policy-Min-TLS-1-0-2019-07"],
    "opensearch_access_control": [
        "fine-grained access control is not enabled",
        "public endpoint",
        "access policy allows everyone",
    ],
    "iam_no_wildcard_admin": [
        'Everything: allows * on Resource "*"',
        'AllOfS3: allows s3:* on Resource "*"',
        "AllOfOneBucket: allows s3:* on arn:aws:s3:::insecure-fixture-open-bucket;",
        "EveryGet: allows s3:Get* on arn:aws:s3:::insecure-fixture-open-bucket/*",
        "aws_opensearch_domain.open (access_policies): statement 0: allows es:* on arn:aws:es:",
        "NotAction",
        "AdministratorAccess",
        "anyone may assume the role",
        "not known at plan time",
    ],
    "sg_no_ingress_from_anywhere": [
        "aws_security_group.open: inline ingress rule 0: allows ingress from 0.0.0.0/0 (anywhere), tcp port 22",
        "aws_security_group.open: inline ingress rule 1: allows ingress from ::/0 (anywhere), all traffic",
        "aws_security_group_rule.open_web: allows ingress from 0.0.0.0/0 (anywhere), tcp port 8080",
        "aws_vpc_security_group_ingress_rule.open_https: allows ingress from ::/0 (anywhere), tcp port 443",
    ],
    "batch_volumes_encrypted": [
        "aws_batch_compute_environment.no_template: no launch template",
        "aws_batch_compute_environment.plain: /dev/xvda: EBS volume is not encrypted",
        "aws_batch_compute_environment.plain: /dev/xvdb: encrypted with the AWS-managed key aws/ebs",
        "aws_batch_compute_environment.bare: sets no EBS volume",
    ],
    "airflow_ui_private": ["aws_mwaa_environment.public: webserver_access_mode is PUBLIC_ONLY"],
}


@pytest.mark.parametrize("check", sorted(INSECURE_FINDINGS))
def test_each_check_reports_the_insecure_plan(check: str, insecure_plan: dict[str, Any], policy_check) -> None:
    violations = policy_check.CHECKS[check](policy_check.Plan.load(insecure_plan))
    text = "\n".join(str(v) for v in violations)
    for expected in INSECURE_FINDINGS[check]:
        assert expected in text, f"{check} did not report {expected!r}; it reported:\n{text}"


def test_every_check_has_an_insecure_case(policy_check) -> None:
    assert set(INSECURE_FINDINGS) == set(policy_check.CHECKS)


# --- targeted mutations of the real plan: each breaks exactly one property ----------------------------------------


def _changes(plan: dict[str, Any], resource_type: str, address_part: str = "") -> list[dict[str, Any]]:
    found = [rc for rc in plan["resource_changes"] if rc["type"] == resource_type and address_part in rc["address"]]
    assert found, (resource_type, address_part)
    return found


def _after(plan: dict[str, Any], resource_type: str, address_part: str = "") -> dict[str, Any]:
    return _changes(plan, resource_type, address_part)[0]["change"]["after"]


def _edit_policy(plan: dict[str, Any], resource_type: str, address_part: str, attribute: str, edit) -> None:
    after = _after(plan, resource_type, address_part)
    document = json.loads(after[attribute])
    edit(document)
    after[attribute] = json.dumps(document)


def _drop(plan: dict[str, Any], resource_type: str, address_part: str) -> None:
    doomed = _changes(plan, resource_type, address_part)[0]
    plan["resource_changes"].remove(doomed)


def _add_statement(statement: dict[str, Any]) -> Callable[[dict[str, Any]], None]:
    return lambda document: document["Statement"].append(statement)


def _domain(plan: dict[str, Any]) -> dict[str, Any]:
    return _after(plan, "aws_opensearch_domain")


MUTATIONS: dict[str, tuple[str, Callable[[dict[str, Any]], None]]] = {
    "public access block partly off": (
        "s3_public_access_blocked",
        lambda p: _after(p, "aws_s3_bucket_public_access_block", "catalogue").update(restrict_public_buckets=False),
    ),
    "public access block missing": (
        "s3_public_access_blocked",
        lambda p: _drop(p, "aws_s3_bucket_public_access_block", "artifacts"),
    ),
    "public access block on an unknown bucket": (
        "s3_public_access_blocked",
        lambda p: (
            _after(p, "aws_s3_bucket_public_access_block", "catalogue").pop("bucket"),
            _changes(p, "aws_s3_bucket_public_access_block", "catalogue")[0]["change"]["after_unknown"].update(
                bucket=True
            ),
        ),
    ),
    "bucket policy allows everyone": (
        "s3_no_public_grants",
        lambda p: _edit_policy(
            p,
            "aws_s3_bucket_policy",
            "catalogue",
            "policy",
            _add_statement(
                {"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "s3:GetObject", "Resource": "arn:aws:s3:::x/*"}
            ),
        ),
    ),
    "public-read ACL": (
        "s3_no_public_grants",
        lambda p: p["resource_changes"].append(
            {
                "address": "module.storage.aws_s3_bucket_acl.extra",
                "mode": "managed",
                "type": "aws_s3_bucket_acl",
                "change": {"actions": ["create"], "after": {"acl": "public-read"}, "after_unknown": {}},
            }
        ),
    ),
    "AES256 instead of KMS": (
        "s3_encrypted_with_kms",
        lambda p: _after(p, "aws_s3_bucket_server_side_encryption_configuration", "artifacts")["rule"][0][
            "apply_server_side_encryption_by_default"
        ][0].update(sse_algorithm="AES256"),
    ),
    "no default encryption": (
        "s3_encrypted_with_kms",
        lambda p: _drop(p, "aws_s3_bucket_server_side_encryption_configuration", "catalogue"),
    ),
    "TLS statement removed": (
        "s3_tls_only",
        lambda p: _edit_policy(
            p,
            "aws_s3_bucket_policy",
            "catalogue",
            "policy",
            lambda d: d.update(Statement=[s for s in d["Statement"] if s.get("Sid") != "DenyInsecureTransport"]),
        ),
    ),
    "TLS statement covers objects only": (
        "s3_tls_only",
        lambda p: _edit_policy(
            p,
            "aws_s3_bucket_policy",
            "artifacts",
            "policy",
            lambda d: [
                s.update(Resource=[r for r in s["Resource"] if r.endswith("/*")])
                for s in d["Statement"]
                if s.get("Sid") == "DenyInsecureTransport"
            ],
        ),
    ),
    "bucket policy dropped": ("s3_tls_only", lambda p: _drop(p, "aws_s3_bucket_policy", "artifacts")),
    "search unencrypted at rest": (
        "opensearch_encrypted",
        lambda p: _domain(p)["encrypt_at_rest"][0].update(enabled=False),
    ),
    "search nodes talk in clear": (
        "opensearch_encrypted",
        lambda p: _domain(p)["node_to_node_encryption"][0].update(enabled=False),
    ),
    "search allows HTTP": (
        "opensearch_https_only",
        lambda p: _domain(p)["domain_endpoint_options"][0].update(enforce_https=False),
    ),
    "search allows TLS 1.0": (
        "opensearch_https_only",
        lambda p: _domain(p)["domain_endpoint_options"][0].update(tls_security_policy="Policy-Min-TLS-1-0-2019-07"),
    ),
    "search without fine-grained access control": (
        "opensearch_access_control",
        lambda p: _domain(p)["advanced_security_options"][0].update(enabled=False),
    ),
    "search on a public endpoint": (
        "opensearch_access_control",
        lambda p: (
            _domain(p).update(vpc_options=[]),
            _changes(p, "aws_opensearch_domain")[0]["change"]["after_unknown"].update(vpc_options=[]),
        ),
    ),
    "search open to everyone": (
        "opensearch_access_control",
        lambda p: _edit_policy(
            p,
            "aws_opensearch_domain",
            "",
            "access_policies",
            lambda d: d["Statement"][0].update(Principal="*"),
        ),
    ),
    "role allows * on *": (
        "iam_no_wildcard_admin",
        lambda p: _edit_policy(
            p,
            "aws_iam_role_policy",
            "orchestration",
            "policy",
            _add_statement({"Effect": "Allow", "Action": "*", "Resource": "*"}),
        ),
    ),
    "role allows a whole service on *": (
        "iam_no_wildcard_admin",
        lambda p: _edit_policy(
            p,
            "aws_iam_role_policy",
            "gpu_workers",
            "policy",
            _add_statement({"Effect": "Allow", "Action": ["s3:GetObject", "s3:*"], "Resource": ["*"]}),
        ),
    ),
    "key policy allows kms:* on *": (
        "iam_no_wildcard_admin",
        lambda p: _edit_policy(
            p,
            "aws_kms_key",
            "",
            "policy",
            lambda d: d["Statement"][0].update(Action="kms:*"),
        ),
    ),
    "role allows NotAction": (
        "iam_no_wildcard_admin",
        lambda p: _edit_policy(
            p,
            "aws_iam_role_policy",
            "orchestration",
            "policy",
            _add_statement({"Effect": "Allow", "NotAction": "iam:*", "Resource": "*"}),
        ),
    ),
    "role policy unknown at plan time": (
        "iam_no_wildcard_admin",
        lambda p: (
            _after(p, "aws_iam_role_policy", "gpu_workers").pop("policy"),
            _changes(p, "aws_iam_role_policy", "gpu_workers")[0]["change"]["after_unknown"].update(policy=True),
        ),
    ),
    "AdministratorAccess attached": (
        "iam_no_wildcard_admin",
        lambda p: _after(p, "aws_iam_role_policy_attachment").update(
            policy_arn="arn:aws:iam::aws:policy/AdministratorAccess"
        ),
    ),
    "role allows s3:* on its one bucket": (
        "iam_no_wildcard_admin",
        lambda p: _edit_policy(
            p,
            "aws_iam_role_policy",
            "gpu_workers",
            "policy",
            _add_statement({"Effect": "Allow", "Action": "s3:*", "Resource": _catalogue_arn(p)}),
        ),
    ),
    "role allows * on one prefix": (
        "iam_no_wildcard_admin",
        lambda p: _edit_policy(
            p,
            "aws_iam_role_policy",
            "orchestration",
            "policy",
            _add_statement({"Effect": "Allow", "Action": "*", "Resource": f"{_catalogue_arn(p)}/staged/*"}),
        ),
    ),
    "role allows a glob of actions": (
        "iam_no_wildcard_admin",
        lambda p: _edit_policy(
            p,
            "aws_iam_role_policy",
            "gpu_workers",
            "policy",
            lambda d: d["Statement"][1].update(Action=["s3:Get*"]),
        ),
    ),
    "endpoint ingress from any IPv4 address": (
        "sg_no_ingress_from_anywhere",
        lambda p: _after(p, "aws_vpc_security_group_ingress_rule", "endpoints").update(cidr_ipv4="0.0.0.0/0"),
    ),
    "endpoint ingress from any IPv6 address": (
        "sg_no_ingress_from_anywhere",
        lambda p: _after(p, "aws_vpc_security_group_ingress_rule", "endpoints").update(
            cidr_ipv4=None, cidr_ipv6="::/0"
        ),
    ),
    "GPU workers open inline to the internet": (
        "sg_no_ingress_from_anywhere",
        lambda p: (
            _after(p, "aws_security_group", "gpu_workers").update(
                ingress=[{"protocol": "tcp", "from_port": 22, "to_port": 22, "cidr_blocks": ["0.0.0.0/0"]}]
            ),
            _changes(p, "aws_security_group", "gpu_workers")[0]["change"]["after_unknown"].update(ingress=[{}]),
        ),
    ),
    "separate ingress rule from anywhere": (
        "sg_no_ingress_from_anywhere",
        lambda p: p["resource_changes"].append(
            {
                "address": "module.search.aws_security_group_rule.extra",
                "mode": "managed",
                "type": "aws_security_group_rule",
                "change": {
                    "actions": ["create"],
                    "after": {
                        "type": "ingress",
                        "protocol": "tcp",
                        "from_port": 443,
                        "to_port": 443,
                        "cidr_blocks": ["0.0.0.0/0"],
                    },
                    "after_unknown": {"security_group_id": True},
                },
            }
        ),
    ),
    "GPU root volume unencrypted": (
        "batch_volumes_encrypted",
        lambda p: _after(p, "aws_launch_template")["block_device_mappings"][0]["ebs"][0].update(encrypted="false"),
    ),
    "GPU root volume on the AWS-managed key": (
        "batch_volumes_encrypted",
        lambda p: (
            _after(p, "aws_launch_template")["block_device_mappings"][0]["ebs"][0].update(kms_key_id=None),
            _changes(p, "aws_launch_template")[0]["change"]["after_unknown"]["block_device_mappings"][0]["ebs"][
                0
            ].update(kms_key_id=False),
        ),
    ),
    "GPU compute environment without its launch template": (
        "batch_volumes_encrypted",
        lambda p: (
            _after(p, "aws_batch_compute_environment")["compute_resources"][0].update(launch_template=[]),
            _changes(p, "aws_batch_compute_environment")[0]["change"]["after_unknown"]["compute_resources"][0].update(
                launch_template=[]
            ),
        ),
    ),
    "Airflow UI on a public endpoint": (
        "airflow_ui_private",
        lambda p: _after(p, "aws_mwaa_environment").update(webserver_access_mode="PUBLIC_ONLY"),
    ),
}


def _catalogue_arn(plan: dict[str, Any]) -> str:
    bucket = _after(plan, "aws_s3_bucket", "catalogue")["bucket"]
    return f"arn:aws:s3:::{bucket}"


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_mutation_fails_exactly_its_check(mutation: str, prod_plan: dict[str, Any], policy_check) -> None:
    check, mutate = MUTATIONS[mutation]
    plan = copy.deepcopy(prod_plan)
    mutate(plan)
    assert failing(policy_check.run_checks(plan)) == {check}


def test_every_check_has_a_mutation(policy_check) -> None:
    assert {check for check, _ in MUTATIONS.values()} == set(policy_check.CHECKS)


# --- the command line --------------------------------------------------------------------------------------------


def _cli(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(INFRA / "policy_check.py"), str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_cli_exit_status(
    tmp_path: Path, prod_plan: dict[str, Any], insecure_plan: dict[str, Any], policy_check
) -> None:
    good, bad, junk = tmp_path / "good.json", tmp_path / "bad.json", tmp_path / "junk.json"
    good.write_text(json.dumps(prod_plan))
    bad.write_text(json.dumps(insecure_plan))
    junk.write_text('{"not": "a plan"}')

    total = len(policy_check.CHECKS)
    ok = _cli(good)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert f"{total}/{total} checks passed" in ok.stdout

    failed = _cli(bad)
    assert failed.returncode == 1
    assert failed.stdout.count("FAIL") == total

    assert _cli(junk).returncode == 2
    assert _cli(tmp_path / "missing.json").returncode == 2
