from streams.settings import Settings


def test_to_env_round_trips_through_the_environment(monkeypatch):
    original = Settings(bootstrap_servers="127.0.0.1:1234", web_port=7001, topic_items="x-items", top_k=7)
    for name, value in original.to_env().items():
        monkeypatch.setenv(name, value)
    assert Settings() == original


def test_to_env_can_name_only_some_settings_leaving_the_child_its_defaults():
    s = Settings(bootstrap_servers="127.0.0.1:1234", top_k=7, increments_within=0.3)
    assert s.to_env(only=["bootstrap_servers", "top_k"]) == {"MMSR_BOOTSTRAP_SERVERS": "127.0.0.1:1234",
                                                           "MMSR_TOP_K": "7"}


def test_the_kept_heap_is_bounded_where_mallopt_s_int_holds_it():
    import pydantic
    import pytest

    assert Settings(malloc_keep_mb=1024).malloc_keep_mb == 1024
    with pytest.raises(pydantic.ValidationError, match="malloc_keep_mb"):
        Settings(malloc_keep_mb=4096)
