"""SearchConfig: defaults, validation messages, environment, and that credentials never leak into text."""

from __future__ import annotations

import pytest

from lmindexer.errors import ConfigError, UserError
from lmindexer.search import SearchBackend, SearchConfig, SearchConfigError, SearchError, load_search_config


def test_defaults():
    config = load_search_config(environ={})
    assert config.engine == "opensearch"
    assert config.hosts == ["http://localhost:9200"]
    assert config.alias == "catalog"
    assert config.keep_indexes == 3
    assert config.compatibility_headers is True


def test_hosts_accept_a_url_or_a_comma_separated_string_and_get_default_ports():
    config = load_search_config({"url": "https://search.example.com, http://10.0.0.5:9201/es/"}, environ={})
    assert config.hosts == ["https://search.example.com:443", "http://10.0.0.5:9201/es"]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"engine": "solr"}, "engine"),
        ({"alias": "Catalog"}, "not a valid alias"),
        ({"alias": "_catalog"}, "not a valid alias"),
        ({"hosts": "localhost:9200"}, "needs an http:// or https:// scheme"),
        ({"hosts": "https://admin:secret@search.example.com"}, "must not contain credentials"),
        ({"hosts": []}, "at least one host"),
        ({"keep_indexes": 0}, "keep_indexes"),
        ({"initial_backoff": 5, "max_backoff": 1}, "max_backoff (1.0) must be at least initial_backoff (5.0)"),
        ({"password": "x"}, "password is set but username is not"),
        ({"engine": "elasticsearch", "aws_auth": "sigv4"}, "aws_auth 'sigv4' needs engine 'opensearch'"),
        ({"aws_auth": "sigv4", "username": "u"}, "either aws_auth or username/password"),
        ({"compatibility_headers": False}, "compatibility_headers applies only to engine 'elasticsearch'"),
        ({"ca_certs": "/nonexistent/ca.pem"}, "CA bundle /nonexistent/ca.pem does not exist"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"aws_service": "aoss"}, "aws_service"),
        ({"bogus": 1}, "bogus"),
    ],
)
def test_invalid_options_fail_with_one_clear_message(values, message):
    with pytest.raises(SearchConfigError) as info:
        load_search_config(values, environ={})
    assert message in str(info.value)
    assert str(info.value).startswith("invalid search config: ")
    assert isinstance(info.value, ConfigError) and isinstance(info.value, SearchError)
    assert isinstance(info.value, UserError)


def test_environment_fills_missing_options_and_explicit_values_win():
    environ = {
        "LMINDEXER_SEARCH_HOSTS": "https://a.example.com,https://b.example.com",
        "LMINDEXER_SEARCH_USERNAME": "indexer",
        "LMINDEXER_SEARCH_PASSWORD": "s3cret-value",
        "LMINDEXER_SEARCH_KEEP_INDEXES": "5",
        "LMINDEXER_SEARCH_ALIAS": "from-env",
    }
    config = load_search_config({"alias": "explicit"}, environ=environ)
    assert config.hosts == ["https://a.example.com:443", "https://b.example.com:443"]
    assert config.username == "indexer"
    assert config.password is not None and config.password.get_secret_value() == "s3cret-value"
    assert config.keep_indexes == 5
    assert config.alias == "explicit"
    # An explicit url replaces the hosts of the environment.
    assert load_search_config({"url": "http://127.0.0.1:9200"}, environ=environ).hosts == ["http://127.0.0.1:9200"]


def test_the_airflow_connection_extra_of_the_deployment_is_accepted():
    # What infra/outputs.tf hands Airflow as the search connection's extra (use_ssl is the hook's business).
    extra = {"verify_certs": True, "aws_auth": "sigv4", "aws_region": "eu-west-1", "aws_service": "es"}
    config = load_search_config({"hosts": ["https://vpc-search.eu-west-1.es.amazonaws.com:443"], **extra}, environ={})
    assert config.aws_auth == "sigv4" and config.describe().endswith("auth sigv4)")


def test_the_password_never_appears_in_text():
    config = SearchConfig(username="indexer", password="s3cret-value", hosts="https://search.example.com")
    for text in (repr(config), str(config), config.describe(), str(config.model_dump())):
        assert "s3cret-value" not in text
    assert config.describe() == "opensearch at https://search.example.com:443 (alias 'catalog', auth basic)"


def test_unreachable_engine_is_a_clear_search_error():
    backend = SearchBackend(SearchConfig(hosts="http://127.0.0.1:9", max_retries=0, timeout=2))
    with pytest.raises(SearchError, match=r"connecting to opensearch at http://127.0.0.1:9 .*failed: cannot reach"):
        backend.server_info()
    backend.close()
