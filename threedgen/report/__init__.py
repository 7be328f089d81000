"""Run reports: ``RUN/report.html`` and an index of runs, for a browser, with nothing fetched
from the network (``threedgen report RUN`` or ``threedgen report OUTPUTS``; a fit writes its own
at the end).

A run's report shows the prompt, the config and command, the metrics, the training curves
(``report_files/curves.png``), the validation renders over time, the turntable videos, links to
every export and an interactive 3D view of the exported glb. The view is three.js (vendored with
its licence in ``static/``, rebuilt by ``js/build.sh``), copied into ``RUN/report_files/`` with
the glb as base64 in a script of its own: browsers load neither module scripts nor ``fetch()``
from ``file://``, and a report should open from disk.

An index (``OUTPUTS/index.html``) lists every run folder below a folder, with a thumbnail, the
prompt, the recipe and the key metrics, in a table sorted by clicking a column; it links each
run's report, which it writes first.
"""
