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


def test_a_worker_bound_to_every_interface_advertises_an_address_others_can_reach(monkeypatch, tmp_path):
    """GET /users/{id} is forwarded to the partition's owner by the address each worker gives the
    group. Replicas in containers bind 0.0.0.0 on one port: advertised as is, every owner's address
    equalled every worker's own and none forwarded."""
    import socket

    from streams.app import Worker

    monkeypatch.setattr(socket, "gethostname", lambda: "state-2")
    addresses = {"state-2": "172.18.0.5"}
    def gethostbyname(name):
        if name not in addresses:
            raise socket.gaierror(-2, "Name or service not known")
        return addresses[name]

    monkeypatch.setattr(socket, "gethostbyname", gethostbyname)
    assert Settings(web_host="127.0.0.1").advertised_web_host == "127.0.0.1"
    assert Settings(web_host="0.0.0.0").advertised_web_host == "172.18.0.5"  # a container's address
    assert Settings(web_host="::").advertised_web_host == "172.18.0.5"
    assert Settings(web_host="0.0.0.0", web_advertised_host="w2.example").advertised_web_host == "w2.example"
    addresses["state-2"] = "127.0.1.1"  # Debian's alias of a host's own name: its name, which others resolve
    assert Settings(web_host="0.0.0.0").advertised_web_host == "state-2"
    addresses.clear()  # a name that does not resolve here
    assert Settings(web_host="0.0.0.0").advertised_web_host == "state-2"
    worker = Worker(Settings(data_dir=tmp_path, web_host="0.0.0.0", web_advertised_host="10.0.0.7", web_port=6099,
                             caption_model="none", summary_model="none"), embedder=object())
    assert (worker.app.conf.web_bind, str(worker.app.conf.canonical_url)) == ("0.0.0.0", "http://10.0.0.7:6099")


def test_an_empty_ca_file_setting_means_the_systems_store(monkeypatch, tmp_path):
    monkeypatch.setenv("MMSR_SSL_CAFILE", "")
    assert Settings().ssl_cafile is None
    monkeypatch.setenv("MMSR_SSL_CAFILE", str(tmp_path / "ca.pem"))
    assert Settings().ssl_cafile == tmp_path / "ca.pem"
