"""Airflow DAGs of the data ferry: an export DAG per ferried resource and an import DAG.

Built by ``govbus.ferry_orchestration`` from the YAML file named by ``GOVBUS_FERRY_CONFIG``;
without it this file defines no DAGs.
"""

from govbus.ferry_orchestration import build_ferry_dags

globals().update(build_ferry_dags())
