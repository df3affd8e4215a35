@echo off
rem Start FramePack's page (the original model); then open http://127.0.0.1:7860. Options go to demo_gradio.py,
rem e.g.  run.bat --inbrowser   (run.bat --help lists them).
setlocal
cd /d "%~dp0"

rem Double-clicked, Explorer runs  cmd /c ""...\run.bat" "  : keep the window open if the app stops with an error.
set "PAUSE_ON_ERROR="
setlocal EnableDelayedExpansion
if /i not "!CMDCMDLINE:%~nx0=!"=="!CMDCMDLINE!" (endlocal & set "PAUSE_ON_ERROR=1") else endlocal

if not exist ".venv\Scripts\python.exe" (
    echo FramePack is not set up yet: run setup.bat first ^(it creates the .venv folder^).
    if defined PAUSE_ON_ERROR pause
    exit /b 1
)
".venv\Scripts\python.exe" demo_gradio.py %*
set "RC=%ERRORLEVEL%"
if not "%RC%"=="0" if defined PAUSE_ON_ERROR pause
exit /b %RC%
