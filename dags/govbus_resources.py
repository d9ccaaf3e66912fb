"""Airflow DAGs for every resource in the govbus registry, one DAG per resource.

The DAGs are built by ``govbus.orchestration``; this file only hands them to Airflow. If the
registry cannot be read, the import error names it and says what to check.
"""

from govbus.orchestration import build_dags

globals().update(build_dags())
