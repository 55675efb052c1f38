"""Prints an account SAS URL for Azurite's well-known development account at ENDPOINT, valid
for two hours; with BAD, its signature is wrong. Usage: python azure_sas.py ENDPOINT [BAD]"""
import datetime
import sys

from azure.storage.blob import AccountSasPermissions, ResourceTypes, generate_account_sas

ACCOUNT = "devstoreaccount1"
# Azurite's published development key.
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
expiry = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=2)
permission = AccountSasPermissions(read=True, write=True, list=True, create=True, add=True, delete=True)
sas = generate_account_sas(ACCOUNT, KEY, ResourceTypes(service=True, container=True, object=True), permission, expiry=expiry)
if len(sys.argv) > 2:
    sas = sas.replace("sig=", "sig=AAAA")
print("%s/%s?%s" % (sys.argv[1], ACCOUNT, sas))
