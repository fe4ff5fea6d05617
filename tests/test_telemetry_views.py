"""The run page's telemetry: the per-level table and the charts, from level documents whose `gpu`,
`server` and `energy` sections come out of the telemetry code itself (summarise_gpus/summarise_server
over readings of two GPUs and a vLLM server), stored through documents.record_level."""
import os
from pathlib import Path

import pytest

from benchmarks.telemetry.readings import GpuReading, ServerReading
from benchmarks.telemetry.summary import energy_section, summarise_gpus, summarise_server
from tests.prerequisites import INKED_PIXELS, launch_chromium, require_chromium

os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")  # Playwright's loop runs in this thread

DURATION = 10.0


def telemetry_level(index: int, concurrency: int) -> dict:
    """A level document (factories) with telemetry sections computed from readings at 2 Hz."""
    from tests.factories import level_doc

    doc = level_doc(index, concurrency, duration_s=DURATION, seed=index)
    load = min(concurrency / 16, 1.0)
    gpu_readings, server_readings = [], []
    energy = [1.0e9, 2.0e9]
    for k in range(-2, int(DURATION * 2) + 3):
        t = k * 0.5
        for g in (0, 1):
            power = 80 + 500 * load * (1.0 if g == 0 else 0.6)
            energy[g] += power * 500  # mJ per half second
            gpu_readings.append(GpuReading(
                t=t, index=g, name="NVIDIA H100 80GB HBM3", util=round(100 * load * (1 if g == 0 else 0.6), 1),
                sm_active=round(70 * load, 1) if g == 0 else None, mem_used_mib=20000 + 1000 * load + g * 10,
                mem_total_mib=81559, power_w=power, energy_mj=energy[g], sm_clock_mhz=1980 - 100 * load,
                temperature_c=40 + 20 * load, throttle_mask=0x4 if load >= 1 else 0x1,
            ))
        if k % 2 == 0:
            server_readings.append(ServerReading(
                t=t, source="http://gpu-host:8000/metrics", engines=["vllm"], queue_depth=max(concurrency - 8, 0),
                running=min(concurrency, 8), prompt_tokens=1e6 + doc["tokens_per_s"] * t,
            ))
    gpu, energy_j, gpu_notes = summarise_gpus(gpu_readings, 0.0, DURATION)
    tokens = round(doc["tokens_per_s"] * DURATION)
    server, server_notes = summarise_server(server_readings, 0.0, DURATION, client_prompt_tokens=tokens)
    doc.update(gpu=gpu, server=server, energy=energy_section(energy_j, requests_ok=doc["requests_ok"],
                                                             prompt_tokens=tokens),
               telemetry_notes=gpu_notes + server_notes)
    return doc


@pytest.fixture
def telemetry_run(transactional_db, target, plan):
    from tests.factories import stored_run

    target.gpu_source = "prometheus"
    target.metrics_urls = ["http://gpu-host:9400/metrics", "http://gpu-host:8000/metrics"]
    target.save()
    run = stored_run(target=target, plan=plan, docs=[telemetry_level(i, c) for i, c in enumerate((1, 8, 16))])
    run.document["telemetry_notes"] = ["DCGM_FI_PROF_SM_ACTIVE is not available from http://gpu-host:9400/metrics"]
    run.save(update_fields=["document"])
    return run


def test_level_columns_take_the_telemetry_sections(telemetry_run):
    """documents.level_columns reads the sections as the telemetry code writes them."""
    level = telemetry_run.levels.get(index=2)
    gpus = level.data["gpu"]["gpus"]
    assert level.gpu_util_mean == pytest.approx((gpus[0]["utilization_mean"] + gpus[1]["utilization_mean"]) / 2)
    assert level.vram_peak_mib == pytest.approx(gpus[0]["memory_used_peak_mib"] + gpus[1]["memory_used_peak_mib"])
    assert level.power_mean_w == pytest.approx(gpus[0]["power_mean_w"] + gpus[1]["power_mean_w"])
    assert level.joules_per_1k_tokens == level.data["energy"]["joules_per_1k_tokens"]
    # 580 W and 380 W for 10 s, over the client's tokens
    assert level.data["energy"]["joules"] == pytest.approx((580 + 380) * DURATION, rel=0.01)


def test_run_page_shows_telemetry_per_level(client, owner, telemetry_run):
    client.force_login(owner)
    html = client.get(telemetry_run.get_absolute_url()).content.decode()
    assert 'id="telemetry"' in html and "GPU and server telemetry" in html
    assert "DCGM_FI_PROF_SM_ACTIVE is not available" in html
    table = html[html.index('id="telemetry-table"'):]
    table = table[: table.index("</table>")]
    for heading in ("GPU util", "SM activity", "VRAM peak", "Power", "J / 1k tokens", "Server queue", "Running"):
        assert f">{heading}</th>" in table, heading
    row = table[table.index('data-level="2"'):]
    row = row[: row.index("</tr>")]
    assert "80 %" in row  # (100 % + 60 %) / 2
    assert "70 % · –" in row  # SM activity on GPU 0 only
    assert "41.0 GiB" in row  # 21,000 + 21,010 MiB peak
    assert "960 W" in row and "9,600 J" in row
    assert "8 / 8" in row  # server queue 16 - 8
    assert "<code>sw_power_cap</code>" in row
    assert "× 1.00" in row
    assert html.count('data-part="gpu"') == 3 and "js/telemetry.js" in html
    for chart in ("util", "clock", "memory", "server", "queue-levels"):
        assert f'id="telemetry-{chart}-canvas"' in html


def test_no_telemetry_card_without_a_source(client, owner, target, plan):
    from tests.factories import stored_run

    run = stored_run(target=target, plan=plan, duration_s=3)
    client.force_login(owner)
    assert 'id="telemetry"' not in client.get(run.get_absolute_url()).content.decode()


def test_outsider_gets_404(client, outsider, telemetry_run):
    client.force_login(outsider)
    assert client.get(telemetry_run.get_absolute_url()).status_code == 404


@pytest.mark.browser
def test_charts_draw_in_a_browser(live_server, client, owner, telemetry_run):
    require_chromium()
    from playwright.sync_api import sync_playwright

    client.force_login(owner)
    session = client.cookies["sessionid"].value
    with sync_playwright() as p:
        browser = launch_chromium(p)
        context = browser.new_context(viewport={"width": 1360, "height": 900})
        context.add_cookies([{"name": "sessionid", "value": session, "url": live_server.url}])
        page = context.new_page()
        errors = []
        page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(live_server.url + telemetry_run.get_absolute_url())
        page.wait_for_function("() => window.Chart && Chart.getChart('telemetry-util-canvas')")
        for chart in ("util", "clock", "memory", "server", "queue-levels"):
            assert page.evaluate(INKED_PIXELS, f"telemetry-{chart}-canvas") > 500, chart
        datasets = page.evaluate("() => Chart.getChart('telemetry-util-canvas').data.datasets.map(d => d.label)")
        assert datasets == ["GPU 0 utilization (%)", "GPU 0 SM activity (%)", "GPU 1 utilization (%)",
                            "Requests/s", "In flight"]
        first_util = page.evaluate("() => Chart.getChart('telemetry-util-canvas').data.datasets[0].data[0].y")
        assert first_util == 100.0  # the last level (16 in flight) is shown first
        page.select_option("#telemetry-level", "0")
        first_util = page.evaluate("() => Chart.getChart('telemetry-util-canvas').data.datasets[0].data[0].y")
        assert first_util == pytest.approx(6.2, abs=0.1)  # 1 in flight of 16
        queue = page.evaluate(
            "() => Chart.getChart('telemetry-queue-levels-canvas').data.datasets[1].data.map(p => p.y)")
        assert queue == [0, 0, 8]
        page.locator("#telemetry").screenshot(path=str(_screenshot_dir() / "run-telemetry.png"))
        # Every column has data here; the table still fits its box (no sideways scroll at 1360 px).
        sizes = page.locator("#telemetry .table-wrap").evaluate("el => [el.scrollWidth, el.clientWidth]")
        assert sizes[0] <= sizes[1], sizes
        browser.close()
    assert errors == []


def _screenshot_dir() -> Path:
    path = Path(__file__).resolve().parent.parent / "var" / "screenshots"
    path.mkdir(parents=True, exist_ok=True)
    return path
