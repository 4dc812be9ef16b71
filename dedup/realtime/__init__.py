"""Real time: Podium's webhooks keep the index current between scans.

* ``secrets`` — the webhook secret: from the environment, or generated and stored encrypted;
* ``receiver`` — verify a delivery, store it under its delivery key, enqueue the work (the view answers
  in milliseconds);
* ``apply`` — the django-q2 task: apply stored deliveries to the index (newest ``updatedAt`` wins, each
  delivery at most once) and re-detect the touched natural keys at once;
* ``registration`` — register, inspect and remove the webhook at Podium; its health for the dashboard.
"""
