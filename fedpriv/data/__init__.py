"""Host-side data: private cohorts (images, EHR code bags, clinical notes), hospitals, round data.

Everything here is NumPy on the host, driven by an explicit ``numpy.random.Generator``
(``fedpriv.keys.numpy_generator`` of a named key stream); only ``build_round_data`` hands
JAX arrays to the jitted training code.

Typical use::

    generator = numpy_generator(keys.data)
    cohort = make_phantom_cohort(1000, 32, generator)
    partition, cohort = partition_cohort(cohort, PartitionConfig(scheme="dirichlet",
                                                                 num_clients=8), generator)
    round_data = build_round_data(cohort.images, cohort.labels, partition, local_steps=1,
                                  sampling="full", generator=numpy_generator(keys.sampling))
"""

from fedpriv.data.client_data import SAMPLING_SCHEMES, build_round_data, poisson_capacity
from fedpriv.data.cohort import ImageCohort, split_train_test
from fedpriv.data.ct import load_ct_small_slice, make_ct_slice_cohort
from fedpriv.data.dicom import UNLABELED, load_dicom_folder, read_dicom_modality
from fedpriv.data.imaging import SOFT_TISSUE_WINDOW, hounsfield_to_unit, resize_image
from fedpriv.data.lesions import LESION_CLASS_NAMES, lesion_class_names
from fedpriv.data.medmnist import load_medmnist_npz
from fedpriv.data.partition import (
    SCHEMES,
    PartitionConfig,
    partition_by_site,
    partition_cohort,
    partition_dirichlet,
    partition_iid,
    partition_quantity_skew,
)
from fedpriv.data.phantoms import make_phantom_cohort
from fedpriv.data.sites import (
    ScannerProfile,
    apply_scanner_profile,
    apply_site_shift,
    sample_scanner_profiles,
)

__all__ = [
    "LESION_CLASS_NAMES",
    "SAMPLING_SCHEMES",
    "SCHEMES",
    "SOFT_TISSUE_WINDOW",
    "UNLABELED",
    "ImageCohort",
    "PartitionConfig",
    "ScannerProfile",
    "apply_scanner_profile",
    "apply_site_shift",
    "build_round_data",
    "hounsfield_to_unit",
    "lesion_class_names",
    "load_ct_small_slice",
    "load_dicom_folder",
    "load_medmnist_npz",
    "make_ct_slice_cohort",
    "make_phantom_cohort",
    "partition_by_site",
    "partition_cohort",
    "partition_dirichlet",
    "partition_iid",
    "poisson_capacity",
    "partition_quantity_skew",
    "read_dicom_modality",
    "resize_image",
    "sample_scanner_profiles",
    "split_train_test",
]

from fedpriv.data.ehr import EHRCohort, EHRCohortConfig, make_ehr_cohort, site_partition  # noqa: E402
from fedpriv.data.notes import NotesCohort, NotesConfig, make_notes_cohort  # noqa: E402
from fedpriv.data.records import TokenRecords, partition_records  # noqa: E402
from fedpriv.data.sources import (COHORT_KINDS, TABULAR_COHORT_KINDS, CohortSource, ehr_records,  # noqa: E402
                                  load_cohort, notes_records)
from fedpriv.data.tabular import (TabularColumn, TabularCohort, load_breast_cancer, load_tabular_csv,  # noqa: E402
                                  make_tabular_ehr_cohort)

__all__ += ["COHORT_KINDS", "TABULAR_COHORT_KINDS", "CohortSource", "EHRCohort", "EHRCohortConfig", "NotesCohort",
            "NotesConfig", "TabularCohort", "TabularColumn", "TokenRecords", "ehr_records", "load_breast_cancer",
            "load_cohort", "load_tabular_csv", "make_ehr_cohort", "make_notes_cohort", "make_tabular_ehr_cohort",
            "notes_records", "partition_records", "site_partition"]
